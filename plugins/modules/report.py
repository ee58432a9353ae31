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
    names must be local regular files (fetch them first) - a FIFO, a directory or a device is refused before it is
    opened, a missing one is noted in the report.
  - When the analysis in O(data) does not list the client's connection (the capture host lists only connections with
    keepalive activity), the local pcaps are analysed for the client port, so that the report says what the capture
    holds - for example a connection closed by a FIN from the server before any probe.
  - The input is checked before anything is written, and the three files are written only when all of them could be
    rendered; a failure leaves nothing of this run behind (no empty directory).
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
    description: Directory of the report (created with its missing parents if needed); an existing path must be a
      directory.
    type: path
    required: true
  data:
    description:
      - What the experiment saw. Required keys - C(run_id) (a string), C(settings) and C(expected) (dicts with
        C(time), C(intvl) and C(probes), integers >= 1), C(client_port) (1..65535).
      - Optional keys - C(governs), C(client_kind), C(server_kind), C(capture_backend) (strings), C(hosts) (C(client), C(server),
        C(loopback)), C(idle_probes) (integer >= 0), C(tolerance) (C(seconds) 0..32767, C(percent) 0..100),
        C(analysis) (the C(tcplab.keepalive.capture) analysis), C(client) (the C(tcplab.keepalive.endpoint)
        outcome), C(drop_at) (seconds since the epoch), C(pcaps) (local paths), C(error), C(cleanup_errors),
        C(notes). Integers may be given as integer strings; any other key is refused.
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
      description:
        - C(connection_found), C(end) (how the connection ended - C(by) V(RST) or V(FIN), C(from) V(client) or
          V(server), C(endpoint), C(after_start) seconds - or null while open), C(answered_probes),
          C(unanswered_probes), C(first_probe_idle_s), C(probe_interval_s), C(rst).
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
    except ReportError as exc:
        module.fail_json(msg=str(exc))
    files = [os.path.join(dest, name) for name in ('report.json', 'report.md', 'timeline.png')]
    module.exit_json(changed=True, dir=dest, report=report, markdown=text, files=files)


if __name__ == '__main__':
    main()
