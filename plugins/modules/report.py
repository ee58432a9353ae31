#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r'''
module: report
short_description: Render the report of a keepalive experiment (run it on the controller)
version_added: 1.0.0
description:
  - Judges a keepalive experiment and writes its report into O(dest) - C(report.json) (verdict,
    reasons, settings, observed probes and RST, the client's outcome), C(report.md) with an annotated
    timeline in the style of the walk-through's tcpdump output, and C(timeline.png), a picture of the
    packets over time by direction with the DROP and the RST marked.
  - The C(tcplab.keepalive.experiment) role runs it on the controller (delegated to C(localhost)); the pcaps it
    names must be local files (fetch them first).
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
    description: Directory of the report (created if needed).
    type: path
    required: true
  data:
    description:
      - What the experiment saw - keys C(run_id), C(settings), C(expected), C(governs), C(client_kind),
        C(server_kind), C(hosts), C(client_port), C(idle_probes), C(tolerance), C(analysis) (the
        C(tcplab.keepalive.capture) analysis), C(client) (the C(tcplab.keepalive.endpoint) outcome),
        C(drop_at), C(pcaps), C(error), C(cleanup_errors), C(notes).
    type: dict
    required: true
requirements:
  - matplotlib and scapy on the controller (for C(timeline.png))
'''

EXAMPLES = r'''
- name: Write the report
  tcplab.keepalive.report:
    dest: /tmp/reports/run1
    data: "{{ experiment_data }}"
  delegate_to: localhost
'''

RETURN = r'''
dir:
  description: The report directory.
  returned: always
  type: str
report:
  description: The content of C(report.json).
  returned: always
  type: dict
  contains:
    verdict:
      description: V(pass) or V(fail).
      type: str
    reasons:
      description: Why it failed (empty on pass).
      type: list
      elements: str
    settings:
      description: The sysctls the experiment set (C(time), C(intvl), C(probes)).
      type: dict
    observed:
      description: C(answered_probes), C(unanswered_probes), C(first_probe_idle_s), C(probe_interval_s), C(rst).
      type: dict
    client:
      description: C(errno), C(exit_code), C(seconds).
      type: dict
markdown:
  description: The content of C(report.md).
  returned: always
  type: str
files:
  description: The files written.
  returned: always
  type: list
  elements: str
'''

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcplab.keepalive.plugins.module_utils._report import ReportError, write_experiment


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type='path', required=True),
            data=dict(type='dict', required=True),
        ),
        supports_check_mode=False,
    )
    dest = module.params['dest']
    try:
        report, text = write_experiment(dest, module.params['data'])
    except (ReportError, KeyError, ValueError, TypeError, OSError) as exc:
        module.fail_json(msg='cannot write the report in %s: %s' % (dest, exc))
    files = [os.path.join(dest, name) for name in ('report.json', 'report.md', 'timeline.png')]
    module.exit_json(changed=True, dir=dest, report=report, markdown=text, files=files)


if __name__ == '__main__':
    main()
