#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: audit_merge
short_description: Merge the reports of sliced keepalive audits into one fleet report (run it on the controller)
version_added: 0.2.0
description:
  - Each run of the C(tcplab.keepalive.audit) playbook or role writes, next to its report, C(audit.slice.json) - its
    hosts, the policy it was asked for and its hash, the collection version and the run's identity. When the audit
    runs as several jobs over disjoint parts of the inventory (AWX / Automation Controller job slicing, or several
    C(--limit) runs), this module merges their slice files into the C(audit.json), C(audit.csv), C(audit.junit.xml)
    and C(audit.html) one run over all the hosts would write - the same host entries, the summary computed again,
    C(generated_at) the newest slice's - plus C(audit.prom) and a merged C(audit.slice.json) (which merges again).
  - Refused before anything is written, with what to do - a source that does not exist or holds no slice file, a
    slice file that cannot be read or is not one (corrupt, edited), the same file or run given twice, slices of
    different policies or collection versions, a host in more than one slice (the hosts and the files are named),
    O(dest) being one of the slices' directories.
  - Idempotent - the same slices give the same files, and nothing is rewritten.
author: tcplab.keepalive developers (@tcplab)
extends_documentation_fragment:
  - tcplab.keepalive.attributes
attributes:
  check_mode:
    support: none
  diff_mode:
    support: none
  platform:
    platforms: posix
seealso:
  - module: tcplab.keepalive.audit_report
options:
  sources:
    description:
      - The slices - each a report directory (the C(audit_report_dir) of a run), a directory whose
        subdirectories are report directories (every one holding C(audit.slice.json) is taken), or the path of an
        C(audit.slice.json).
    type: list
    elements: path
    required: true
  dest:
    description:
      - Directory of the merged report (created if needed), not one of the slices' directories.
      - Written as M(tcplab.keepalive.audit_report) writes - all files are renamed into place only when all are
        written.
    type: path
    required: true
  fail_on:
    description:
      - Sets RV(fail) - V(error) when any error finding or any host that could not be audited,
        V(warning) also for warning findings, V(none) never. The module itself does not fail.
    type: str
    choices: [none, warning, error]
    default: none
'''

EXAMPLES = r'''
- name: Merge the slices of an AWX sliced job (each wrote its report into a subdirectory of /srv/audit/JOB)
  tcplab.keepalive.audit_merge:
    sources: ["/srv/audit/{{ awx_workflow_job_id }}"]
    dest: /srv/audit/latest
    fail_on: error
  register: merged

- name: Merge three report directories
  tcplab.keepalive.audit_merge:
    sources: [/tmp/audit-1, /tmp/audit-2, /tmp/audit-3]
    dest: /tmp/audit
'''

RETURN = r'''
summary:
  description:
    - The C(summary) of the merged C(audit.json), computed again over all the slices' hosts.
    - Its keys are those of RV(tcplab.keepalive.audit_report#module:summary), documented there once for both modules.
  returned: success
  type: dict
lines:
  description: A short human summary.
  returned: success
  type: list
  elements: str
fail:
  description: Whether the play should fail according to O(fail_on).
  returned: success
  type: bool
files:
  description: The four report files written.
  returned: success
  type: list
  elements: str
prom:
  description: The path of the merged C(audit.prom).
  returned: success
  type: str
slice_file:
  description: The path of the merged C(audit.slice.json).
  returned: success
  type: str
slices:
  description: The slices merged, in order.
  returned: success
  type: list
  elements: dict
  contains:
    path:
      description: The slice file.
      type: str
    id:
      description: The slice's identity.
      type: str
    hosts:
      description: Its number of hosts.
      type: int
    generated_at:
      description: When it was written.
      type: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_merge import (
    check_dest, load_sources, merge, slice_info)
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_prom import render_prom
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import (
    FILES, MSG_WRITE, PROM_FILE, SLICE_FILE, ReportError, render_slice, should_fail, summary_lines, write_reports)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sources=dict(type='list', elements='path', required=True),
            dest=dict(type='path', required=True),
            fail_on=dict(type='str', choices=['none', 'warning', 'error'], default='none'),
        ),
        supports_check_mode=False,
    )
    p = module.params
    try:
        slices = load_sources(p['sources'])
        check_dest(p['dest'], slices)
        report, doc = merge(slices)
        changed = write_reports(p['dest'], report, {PROM_FILE: render_prom(report), SLICE_FILE: render_slice(doc)})
    except ReportError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=MSG_WRITE % (p['dest'], exc))
    module.exit_json(changed=bool(changed), summary=report['summary'], lines=summary_lines(report),
                     fail=should_fail(report, p['fail_on']), files=[os.path.join(p['dest'], name) for name in FILES],
                     prom=os.path.join(p['dest'], PROM_FILE), slice_file=os.path.join(p['dest'], SLICE_FILE),
                     slices=slice_info(slices))


if __name__ == '__main__':
    main()
