# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks of evidence.kernel in the reports of this target's runs (used by runme.sh).

  kernel_evidence.py check REPORT.json [NETSTAT_BEFORE NETSTAT_AFTER]
      the report passed, carries evidence.kernel, capture and kernel agree (TCPKeepAlive delta = the client's probes
      in the capture, TCPAbortOnTimeout delta = 1), the timer samples count 1..probes unanswered probes; with the two
      /proc/net/netstat texts of the client's namespace read by runme.sh around the run, the report's deltas are the
      kernel's, read independently of the role.
  kernel_evidence.py timers REPORT.json NETSTAT_BEFORE NETSTAT_AFTER
      as check, and the client's end sampled its keepalive timer at each unanswered probe while it awaited the
      client's failure: one sample per probe, counting 1, 2, ... of them, each with tcpi_probes alike.
  kernel_evidence.py forge REPORT_DIR OUT.json DEST
      the arguments of a report module call (writing into DEST) over the run's pcap whose kernel end sample counts one probe more than the
      kernel did (a disagreement the verdict must fail on); prints the forged TCPKeepAlive delta.
  kernel_evidence.py forged DEST/report.json COUNT
      the forged report failed with both numbers.
"""
from __future__ import annotations

import json
import os
import sys


def tcpext(path):
    with open(path) as handle:
        lines = [line.split() for line in handle.read().splitlines() if line.strip()]
    for head, values in zip(lines[0::2], lines[1::2]):
        if head[0] == 'TcpExt:':
            pairs = dict(zip(head[1:], values[1:]))
            return int(pairs['TCPKeepAlive']), int(pairs['TCPAbortOnTimeout'])
    raise SystemExit('%s has no TcpExt line' % path)


def check(path, before=None, after=None):
    with open(path) as handle:
        report = json.load(handle)
    assert report['verdict'] == 'pass', report['reasons']
    kernel = report['evidence']['kernel']
    print(json.dumps({'run_id': report['run_id'], 'evidence.kernel': {k: kernel[k] for k in (
        'tcp_keepalive', 'tcp_abort_on_timeout', 'tcp_timeouts', 'capture', 'agree', 'timer_samples', 'source')}}))
    assert kernel['agree'] is True, kernel
    assert kernel['tcp_keepalive'] == report['observed']['probes_total'] == kernel['capture']['client_probes'], kernel
    assert kernel['tcp_abort_on_timeout'] == 1 and kernel['others']['count'] == 0, kernel
    # a sample is taken after the capture showed an unanswered probe: the socket counts 1..3 of them, or (with 1 s
    # intervals the play can lag behind the kernel) it has already gone
    samples = kernel['timer_samples']
    unanswered = [s['unanswered'] for s in samples if s['timer'] is not None]
    assert all(s['timer'] in ('keepalive', None) for s in samples) and len(samples) <= report['expected']['probes'], samples
    assert unanswered == sorted(unanswered) and all(1 <= u <= report['expected']['probes'] for u in unanswered), samples
    if before:
        (k0, a0), (k1, a1) = tcpext(before), tcpext(after)
        assert (k1 - k0, a1 - a0) == (kernel['tcp_keepalive'], kernel['tcp_abort_on_timeout']), (k1 - k0, a1 - a0, kernel)


def timers(path, before, after):
    check(path, before, after)
    with open(path) as handle:
        report = json.load(handle)
    samples = report['evidence']['kernel']['timer_samples']
    assert [s['unanswered'] for s in samples] == list(range(1, report['settings']['probes'] + 1)), samples
    assert all(s['timer'] == 'keepalive' and s['tcpi_probes'] == s['unanswered'] for s in samples), samples


def forge(report_dir, out, dest):
    with open(os.path.join(report_dir, 'report.json')) as handle:
        report = json.load(handle)
    kernel = report['evidence']['kernel']
    start = {'time': 1.0, 'netns_inode': 1, 'counters': kernel['counters_start'], 'others': [], 'others_count': 0}
    end = dict(start, time=2.0, counters=dict(kernel['counters_end'], tcp_keepalive=kernel['counters_end']['tcp_keepalive'] + 1))
    pcaps = sorted(os.path.join(report_dir, name) for name in os.listdir(report_dir) if name.endswith('.pcap'))
    data = {key: report[key] for key in ('run_id', 'settings', 'expected', 'hosts', 'tolerance', 'client_kind',
                                         'server_kind', 'governs')}
    data.update({'client_port': 22345, 'idle_probes': 1, 'client': report['client'], 'pcaps': pcaps,
                 'kernel': {'server_port': 12345, 'start': start, 'samples': [], 'end': end}})
    with open(out, 'w') as handle:
        json.dump({'dest': dest, 'data': data}, handle)
    print(kernel['tcp_keepalive'] + 1)


def forged(path, kernel_count):
    """The forged report failed, naming the capture's count and the kernel's."""
    with open(path) as handle:
        report = json.load(handle)
    reasons = [r for r in report['reasons'] if r.startswith('capture and kernel disagree on the keepalive probes')]
    print(json.dumps({'verdict': report['verdict'], 'reasons': reasons}))
    assert report['verdict'] == 'fail' and report['evidence']['kernel']['agree'] is False, report
    assert reasons and reasons[0].endswith('TCPKeepAlive rose by %s' % kernel_count), reasons
    assert 'the capture shows %d sent' % (int(kernel_count) - 1) in reasons[0], reasons


if __name__ == '__main__':
    {'check': check, 'timers': timers, 'forge': forge, 'forged': forged}[sys.argv[1]](*sys.argv[2:])
