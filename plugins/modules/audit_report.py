#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: audit_report
short_description: Aggregate keepalive audit results of many hosts and write the fleet report (run it on the controller)
version_added: 0.1.0
description:
  - Aggregates the registered results of M(tcplab.keepalive.audit) of every host of a play, in one pass
    over the hosts, and writes into O(dest) C(audit.json), C(audit.csv), C(audit.junit.xml) (one test
    case per host and namespace) and C(audit.html) (one self-contained page - summary counts, a sortable
    table and a histogram of detection times as inline SVG; no external assets).
  - Hosts in O(hosts) without a result are reported as V(unreachable) (not in O(reachable)) or V(failed);
    no host is dropped.
  - Text from the hosts (host names, namespace labels, messages) cannot inject anything - CSV cells that a
    spreadsheet would read as a formula (starting with C(=), C(+), C(-), C(@), tab or carriage return) get a
    leading C('), the numeric columns stay numbers; the HTML page escapes it; the JUnit XML stays
    well-formed (characters XML cannot carry become U+FFFD).
  - Next to them it writes C(audit.prom) (the metrics in Prometheus' text exposition format - series
    labelled C(host) and C(namespace) - for node_exporter's textfile collector or any scraper) and
    C(audit.slice.json) (the hosts, the policy asked for and its hash, the collection version and the
    run's identity O(slice_id)), which M(tcplab.keepalive.audit_merge) merges with the slice files of
    other runs over other hosts (AWX job slicing).
  - The C(tcplab.keepalive.audit) role runs it once, delegated to C(localhost).
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
options:
  dest:
    description:
      - Directory of the report (created if needed). Refused when it names an existing file.
      - The files are written side by side and renamed into place only when all are written; on a failure
        the previous report stays as it was and a directory this call created is removed.
    type: path
    required: true
  hosts:
    description: Every host of the play (C(ansible_play_hosts_all)), in report order.
    type: list
    elements: str
    required: true
  reachable:
    description: The hosts still in the play (C(ansible_play_hosts)).
    type: list
    elements: str
    default: []
  results:
    description:
      - Inventory hostname to the registered result of M(tcplab.keepalive.audit) (or null).
      - Checked before anything is written - a result that is not a mapping, or whose namespaces or
        findings are not what the module returns, is refused with the host and the entry named.
    type: dict
    default: {}
  remediation:
    description: Inventory hostname to a summary of what remediation did on that host.
    type: dict
    default: {}
  fail_on:
    description:
      - Sets RV(fail) - V(error) when any error finding or any host that could not be audited,
        V(warning) also for warning findings, V(none) never. The module itself does not fail.
    type: str
    choices: [none, warning, error]
    default: none
  policy:
    version_added: 0.2.0
    description:
      - The policy the audit was asked for (the O(tcplab.keepalive.audit#module:policy) option, as given).
      - Recorded in C(audit.slice.json) with its hash; M(tcplab.keepalive.audit_merge) merges only
        slices with the same hash.
    type: dict
    default: {}
  slice_id:
    version_added: 0.2.0
    description:
      - The identity of this run in C(audit.slice.json), for example AWX's C(awx_job_id).
      - Empty - the controller's host name, the process id and the time.
    type: str
    default: ''
  host_metrics:
    version_added: 0.2.0
    description:
      - Also return RV(host_metrics), each host's own metrics (to write on that host for node_exporter's
        textfile collector).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Write the fleet report
  tcplab.keepalive.audit_report:
    dest: /tmp/audit
    hosts: "{{ ansible_play_hosts_all }}"
    reachable: "{{ ansible_play_hosts }}"
    results: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'audit_result'))) }}"
  run_once: true
  delegate_to: localhost

- name: Write the report of one slice of an AWX sliced job (merged later by tcplab.keepalive.audit_merge)
  tcplab.keepalive.audit_report:
    dest: "/srv/audit/{{ awx_workflow_job_id }}/{{ awx_job_id }}"
    hosts: "{{ ansible_play_hosts_all }}"
    reachable: "{{ ansible_play_hosts }}"
    results: "{{ dict(ansible_play_hosts_all | zip(ansible_play_hosts_all | map('extract', hostvars, 'audit_result'))) }}"
    policy: {preset: azure-lb}
    slice_id: "{{ awx_job_id }}"
  run_once: true
  delegate_to: localhost
'''

RETURN = r'''
summary:
  description:
    - The C(summary) of C(audit.json).
    - M(tcplab.keepalive.audit_merge) returns the same structure for a merged report (RV(tcplab.keepalive.audit_merge#module:summary)).
  returned: success
  type: dict
  contains:
    hosts:
      description: Hosts in the report.
      type: int
    compliant:
      description: Hosts without error or warning findings.
      type: int
    noncompliant:
      description: Audited hosts with error or warning findings.
      type: int
    unreachable:
      description: Hosts that could not be reached.
      type: int
    failed:
      description: Hosts where the audit failed.
      type: int
    namespaces:
      description: Namespaces audited.
      type: int
    findings:
      description: Count of findings per severity (C(error), C(warning), C(info)).
      type: dict
    findings_by_id:
      description: Count of findings per id.
      type: dict
    detection_seconds:
      description: C(min), C(median) and C(max) detection time over all namespaces.
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
  description: The four files written.
  returned: success
  type: list
  elements: str
prom:
  version_added: 0.2.0
  description: The path of C(audit.prom), the metrics in Prometheus' text exposition format.
  returned: success
  type: str
slice_file:
  version_added: 0.2.0
  description: The path of C(audit.slice.json), what M(tcplab.keepalive.audit_merge) reads.
  returned: success
  type: str
slice_id:
  version_added: 0.2.0
  description: The identity of this run in the slice file.
  returned: success
  type: str
host_metrics:
  version_added: 0.2.0
  description: Inventory hostname to the text of that host's own C(.prom) file.
  returned: when O(host_metrics=true)
  type: dict
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_prom import host_metrics, render_prom
from ansible_collections.tcplab.keepalive.plugins.module_utils._audit_report import (
    FILES, MSG_WRITE, PROM_FILE, SLICE_FILE, ReportError, aggregate, render_slice, should_fail, slice_document,
    summary_lines, write_reports)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type='path', required=True),
            hosts=dict(type='list', elements='str', required=True),
            reachable=dict(type='list', elements='str', default=[]),
            results=dict(type='dict', default={}),
            remediation=dict(type='dict', default={}),
            fail_on=dict(type='str', choices=['none', 'warning', 'error'], default='none'),
            policy=dict(type='dict', default={}),
            slice_id=dict(type='str', default=''),
            host_metrics=dict(type='bool', default=False),
        ),
        supports_check_mode=False,
    )
    p = module.params
    try:
        report = aggregate(p['hosts'], p['reachable'], p['results'], p['remediation'])
        doc = slice_document(report, p['policy'], p['slice_id'] or None)
        changed = write_reports(p['dest'], report, {PROM_FILE: render_prom(report), SLICE_FILE: render_slice(doc)})
    except ReportError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=MSG_WRITE % (p['dest'], exc))
    extra = {'host_metrics': host_metrics(report)} if p['host_metrics'] else {}
    module.exit_json(changed=bool(changed), summary=report['summary'], lines=summary_lines(report),
                     fail=should_fail(report, p['fail_on']), files=[os.path.join(p['dest'], name) for name in FILES],
                     prom=os.path.join(p['dest'], PROM_FILE), slice_file=os.path.join(p['dest'], SLICE_FILE),
                     slice_id=doc['slice']['id'], **extra)


if __name__ == '__main__':
    main()
