# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the audit playbook as AWX runs the slices of a sliced job: one ansible-runner run per
slice (the library AWX itself uses), all at once, each limited to a disjoint part of the
inventory (host i in slice i mod N, as AWX cuts it) and writing its report into its own
directory. Prints one JSON line: the wall time and each slice's status and hosts.

  python slices.py COUNT WORK_DIR REPORTS_DIR FORKS INVENTORY... -- HOST...
"""

from __future__ import annotations

import json
import os
import sys
import time

import ansible_runner


def main(argv):
    count, work, reports, forks = int(argv[0]), argv[1], argv[2], int(argv[3])
    split = argv.index('--')
    inventories, hosts = [os.path.abspath(p) for p in argv[4:split]], argv[split + 1:]
    runs = []
    start = time.monotonic()
    for n in range(count):
        part = hosts[n::count]
        private = os.path.join(work, 'runner-%d' % n)
        os.makedirs(private)
        thread, runner = ansible_runner.run_async(
            private_data_dir=private, playbook='tcplab.keepalive.audit', inventory=inventories,
            limit=','.join(part), forks=forks, quiet=True, ident='slice-%d' % n,
            extravars={'audit_policy': {'preset': 'azure-lb'}, 'audit_slice_id': 'slice-%d' % n,
                       'audit_report_dir': os.path.join(reports, 'slice-%d' % n)})
        runs.append((n, part, thread, runner))
    out = []
    for n, part, thread, runner in runs:
        thread.join()
        out.append({'slice': n, 'status': runner.status, 'rc': runner.rc, 'hosts': len(part),
                    'stdout': os.path.join(work, 'runner-%d' % n, 'artifacts', 'slice-%d' % n, 'stdout')})
    print(json.dumps({'seconds': round(time.monotonic() - start, 2), 'slices': out}))
    # unreachable hosts make ansible-playbook exit 4 (AWX calls that job failed); anything else is an error
    return 0 if all(s['rc'] in (0, 4) for s in out) else 1


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
