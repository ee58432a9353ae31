#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) tcplab.keepalive developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
module: report
short_description: Render the report of a keepalive experiment (run it on the controller)
version_added: 0.1.0
description:
  - Judges a keepalive experiment and writes its report into O(dest) - C(report.json) (verdict,
    reasons, settings, observed probes and RST, the client's outcome), C(report.md) with an annotated
    timeline in the style of the walk-through's tcpdump output, and C(timeline.png), a picture of the
    packets over time by direction with the DROP and the RST marked. The probes, their answers and the RST are
    drawn as the analyser classified them (the same classification the verdict uses).
  - The C(tcplab.keepalive.experiment) role runs it on the controller (delegated to C(localhost)); the pcaps it
    names must be local regular files (fetch them first) - a FIFO, a directory or a device is refused before it is
    opened, a missing one is noted in the report.
  - When the analysis in O(data) does not list the client's connection (the capture host lists only connections with
    keepalive activity), the local pcaps are analysed for the client port, so that the report says what the capture
    holds - for example a connection closed by a FIN from the server before any probe.
  - The input is checked before anything is written, and the three files are written only when all of them could be
    rendered; a failure leaves nothing of this run behind (no empty directory) but the pcaps of O(pcap_files).
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
      - What the experiment saw. O(data.run_id), O(data.settings), O(data.expected) and O(data.client_port) must be
        given (the report fails naming the missing one); any other key is refused.
      - Integers may be given as integer strings (templates deliver either).
    type: dict
    required: true
    suboptions:
      run_id:
        description: The run id of the experiment. Required.
        type: str
      settings:
        description: The keepalive sysctls the experiment set - C(time), C(intvl) and C(probes), integers >= 1. Required.
        type: dict
      expected:
        description: The settings the probes are judged against - C(time), C(intvl) and C(probes), integers >= 1. Required.
        type: dict
      client_port:
        description: The keepalive client's local port, 1..65535. Required.
        type: int
      governs:
        description: What governs the client's keepalive (the sysctls, or per-socket options), in words.
        type: str
      client_kind:
        description: The kind of keepalive client (for example V(python) or V(curl)).
        type: str
      server_kind:
        description: The kind of server.
        type: str
      capture_backend:
        description: The program that captured the packets (for example V(tcpdump)).
        type: str
      hosts:
        description: Where the experiment ran - C(client), C(server), C(loopback) (a boolean) and C(address).
        type: dict
      idle_probes:
        description: Answered probes expected before the DROP, an integer >= 0.
        type: int
        default: 0
      tolerance:
        description: How far a measured interval may be from the expected one - C(seconds) (0..32767, default 0.25)
          plus C(percent) of the expected value (0..100, default 10).
        type: dict
      analysis:
        description: The analysis of the capture (the C(analysis) the C(tcplab.keepalive.capture) module returns when it
          stops, or a C(tcplab.keepalive.pcap_info) result).
        type: dict
      client:
        description: The outcome of the keepalive client (the C(outcome) of C(tcplab.keepalive.endpoint)) - C(state),
          C(errno), C(exit_code), C(error), C(seconds).
        type: dict
      drop_at:
        description: When the DROP rule was inserted, in seconds since the epoch (null, V(None) or an empty string for
          none).
        type: raw
      pcaps:
        description: Local paths of the captures (fetched from the capture hosts); the first one is drawn in
          C(timeline.png). A missing one is noted in the report; a FIFO, a directory or a device is refused.
        type: list
        elements: str
      error:
        description: Why the experiment did not complete, if it did not.
        type: str
      cleanup_errors:
        description: What could not be cleaned up after the experiment.
        type: list
        elements: str
      notes:
        description: Remarks to add to the report.
        type: list
        elements: str
      fault:
        description:
          - The fault of the experiment - C(kind) V(drop) (the default, the DROP rule) or V(idle_timeout) with
            C(seconds) (the middlebox's idle timeout), C(action) (V(drop) or V(reset)), C(middlebox) (its inventory
            hostname) and C(preset) (or null).
          - With V(idle_timeout) the verdict is the prediction (keepalive C(time) below C(seconds) survives, else the
            client fails with C(ETIMEDOUT) after a drop or C(ECONNRESET) after a reset) against the client's outcome
            (V(answered) when its request after the idle time came back), and C(report.json) gains C(fault),
            C(prediction) and C(observed.survived).
        type: dict
        version_added: 0.2.0
      kernel:
        description:
          - The kernel's own evidence from the client's namespace (every fault) - C(server_port), C(start) (a
            C(tcplab.keepalive.kernel_counters) sample taken before the client connected), C(end) (one taken after it
            ended, or null), C(samples) (those taken while waiting), and optionally C(capture_host) (V(client) or
            V(server), where the capture the report reads ran) and C(others_watch) (what C(kernel_counters)
            C(watch=stopped) returned - C(seen) - or C(error)).
          - C(report.json) gains C(evidence.kernel) - the deltas C(tcp_keepalive), C(tcp_abort_on_timeout),
            C(tcp_timeouts), C(tcp_loss_probes) and C(tcp_retrans_segs), the timer samples, the other connections
            that could move the counters and what their watch saw, and C(agree). The verdict fails when the
            capture's probes (the client's, the server's on loopback, and the other connections' by their watch)
            differ from the C(TCPKeepAlive) delta, the client's abort from the C(TCPAbortOnTimeout) delta, or - with
            O(data.in_flight) - the client's resends from the C(RetransSegs) delta or, with the expiry that ended
            the connection, from C(TCPTimeouts) + C(TCPLossProbes).
          - Not judged, with a note saying why - other connections that could move the counters and were not
            watched, no end sample, samples of different namespaces, no client connection in the capture, or an
            idle-timeout run captured on the server (behind the middlebox).
        type: dict
        version_added: 0.2.0
      in_flight:
        description:
          - The in-flight experiment (the client wrote after the DROP, so retransmissions decide, not keepalive) -
            C(rto_ms) (the RTO measured on the client's socket before the DROP), C(retries2)
            (C(net.ipv4.tcp_retries2) in the client's namespace), C(user_timeout_ms) (TCP_USER_TIMEOUT, 0 for none),
            and optionally C(tail_loss_probe) (default true) and C(hz) (the kernel's CONFIG_HZ, default 250).
          - The verdict is the retransmission model's prediction (docs/in_flight.md) against the client's data
            segments after the DROP in the capture and its failure; C(report.json) gains C(in_flight),
            C(prediction), C(observed.ended_by) and C(observed.retransmissions).
        type: dict
        version_added: 0.2.0
  pcap_files:
    description:
      - Pcaps handed over as content rather than fetched (the C(content) that M(tcplab.keepalive.experiment_host)
        returns with O(tcplab.keepalive.experiment_host#module:captures[].return_content)), each written as
        C(<dest>/<name>.pcap) before the report is rendered; name them in O(data.pcaps) too, in the order the report
        reads them.
      - They are checked (a plain file name, valid base64) before anything is written, and they stay when the report
        fails later, since they are the run's evidence and their hosts no longer have them.
    type: list
    elements: dict
    version_added: 0.2.0
    suboptions:
      name:
        description: The file's name without C(.pcap) (the capture host's inventory name); no C(/).
        type: str
        required: true
      content:
        description: The pcap, base64-encoded.
        type: str
        required: true
requirements:
  - matplotlib on the controller (for C(timeline.png))
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
          C(unanswered_probes), C(first_probe_idle_s), C(probe_interval_s), C(rst); with an idle-timeout fault also
          C(survived) (the request after the idle time was answered); with O(data.in_flight) also C(ended_by)
          (V(keepalive), V(retransmissions), V(user_timeout), or null), C(retransmissions) (C(at_ms) after the write,
          C(what)) and C(in_flight) (C(write_at), C(sent_ms), C(end_ms)).
      type: dict
    client:
      description: C(errno), C(exit_code), C(seconds) (and with an idle-timeout fault C(connected_at), C(requested_at),
        C(answered_at), C(failed_at)).
      type: dict
    fault:
      description: The fault (C(kind), C(seconds), C(action), C(middlebox), C(preset)); with an idle-timeout fault only.
      type: dict
      returned: with an idle-timeout fault (O(data.fault))
    prediction:
      description:
        - With an idle-timeout fault C(survives) (a boolean) and C(client_errno) (how the client is predicted to fail,
          or null).
        - With O(data.in_flight) the retransmission model's timeline - C(events) (C(at_ms), C(latest_ms), C(what)),
          C(end_ms), C(end_latest_ms), C(ended_by), C(timeout_ms), C(clock_start_ms), C(retransmissions),
          C(early_end) and C(rule).
      type: dict
      returned: with an idle-timeout fault (O(data.fault)) or O(data.in_flight)
    in_flight:
      description: The in-flight settings the prediction used (see O(data.in_flight)).
      type: dict
      returned: with O(data.in_flight)
    evidence:
      description: C(kernel) - the kernel's evidence (see O(data.kernel)); C(agree) is true, false or null (not
        judged, C(notes) say why).
      type: dict
      returned: with O(data.kernel)
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
            data=dict(type='dict', required=True, options=dict(
                run_id=dict(type='str'),
                settings=dict(type='dict'),
                expected=dict(type='dict'),
                client_port=dict(type='int'),
                governs=dict(type='str'),
                client_kind=dict(type='str'),
                server_kind=dict(type='str'),
                capture_backend=dict(type='str'),
                hosts=dict(type='dict'),
                idle_probes=dict(type='int', default=0),
                tolerance=dict(type='dict'),
                analysis=dict(type='dict'),
                client=dict(type='dict'),
                drop_at=dict(type='raw'),
                pcaps=dict(type='list', elements='str'),
                error=dict(type='str'),
                cleanup_errors=dict(type='list', elements='str'),
                notes=dict(type='list', elements='str'),
                fault=dict(type='dict'),
                kernel=dict(type='dict'),
                in_flight=dict(type='dict'),
            )),
            pcap_files=dict(type='list', elements='dict', options=dict(
                name=dict(type='str', required=True),
                content=dict(type='str', required=True, no_log=False),
            )),
        ),
        supports_check_mode=False,
    )
    dest = module.params['dest']
    try:
        report, text = write_experiment(dest, module.params['data'], module.params['pcap_files'])
    except ReportError as exc:
        module.fail_json(msg=str(exc))
    files = [os.path.join(dest, name) for name in ('report.json', 'report.md', 'timeline.png')]
    module.exit_json(changed=True, dir=dest, report=report, markdown=text, files=files)


if __name__ == '__main__':
    main()
