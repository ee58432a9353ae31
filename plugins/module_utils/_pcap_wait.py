# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Follow a capture that is still being written until the prober's probes
reach a count or its connection ends (pcap_info's wait_for).

This file is private to the collection: its names may change at any time
and must not be used from outside tcplab.keepalive.
"""

from __future__ import annotations

import time

from ansible_collections.tcplab.keepalive.plugins.module_utils._pcap import PcapError, analyse


def prober_state(result, port):
    """(answered, final unanswered, ended) of the prober on local port `port`."""
    suffix = ':%d' % port
    answered = unanswered = 0
    ended = False
    for conn in result.get('connections') or []:
        if not any(str(e).endswith(suffix) for e in conn.get('endpoints') or []):
            continue
        ended = ended or bool(conn.get('rst'))
        for prober in conn.get('probers') or []:
            if str(prober.get('endpoint', '')).endswith(suffix):
                answered = max(answered, prober.get('answered') or 0)
                unanswered = max(unanswered, prober.get('final_unanswered') or 0)
    return answered, unanswered, ended


def met(cond, answered, unanswered, ended):
    if cond.get('answered') is not None and answered < cond['answered']:
        return False
    if cond.get('unanswered') is not None and unanswered < cond['unanswered']:
        return False
    if cond.get('rst') and not ended:
        return False
    return True


def wait_for(path, cond, clock=time.monotonic, sleep=time.sleep, **kwargs):
    """analyse() repeatedly until cond is met, the connection ended, or cond['timeout'] passed."""
    start = clock()
    timeout = cond.get('timeout') if cond.get('timeout') is not None else 5.0
    interval = max(0.01, cond.get('interval') or 0.1)
    while True:
        try:
            result = analyse(path, **kwargs)
        except PcapError:
            # the capture may not have written its header yet
            if clock() - start >= timeout:
                raise
            sleep(interval)
            continue
        answered, unanswered, ended = prober_state(result, cond['port'])
        done = met(cond, answered, unanswered, ended)
        if done or ended or clock() - start >= timeout:
            result['waited'] = {'met': done, 'ended': ended, 'seconds': round(clock() - start, 3),
                                'answered': answered, 'unanswered': unanswered}
            return result
        sleep(interval)
